package client

func (s *Server) routesProfile() {}
